"""``payfn deploy``: the one template, deployed with CloudFormation (SPEC: "one template, three targets").

The steps are those of ``sam build`` + ``sam package`` + ``sam deploy``, done here so
that they also work against an endpoint that is not AWS, one module per step:
:mod:`~infra.deploy.target` (samconfig environments, clients), :mod:`~infra.deploy.artifacts`
(build, package to S3), :mod:`~infra.deploy.transform` (the SAM transform where the
endpoint has none, emulator gaps), :mod:`~infra.deploy.cloudformation` (create or
update, wait, outputs) and :mod:`~infra.deploy.command` (the CLI).
"""
