"""The local Kafka event-source poller: Lambda's Kafka event source mappings, run from the template."""
