-- The read-only user's bounds, enforced by the server (applied as root on every `payfn up` of a
-- MariaDB payfn runs; see README "What payreader can still do"). SELECT alone lets a session take
-- row locks (SELECT ... FOR UPDATE / LOCK IN SHARE MODE) and override its own statement limit,
-- so an event of root's ends every session of the reader that holds a lock, runs one statement
-- past its limit, or keeps a transaction open too long (the event runs every second).
-- Placeholders {reader}, {statement_seconds} and {transaction_seconds} are filled in by the stack.
-- A server started before the event existed may run without its scheduler.
SET GLOBAL event_scheduler = ON;
DELIMITER //
CREATE OR REPLACE PROCEDURE payfn_reader_guard(reader VARCHAR(80), statement_seconds INT,
                                               transaction_seconds INT)
    SQL SECURITY DEFINER
    COMMENT 'payfn: end sessions of the read-only user that lock rows or run too long'
BEGIN
    DECLARE finished INT DEFAULT 0;
    DECLARE victim BIGINT UNSIGNED;
    DECLARE victims CURSOR FOR
        SELECT p.ID FROM information_schema.PROCESSLIST p
        LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
        WHERE p.USER = reader
          AND (t.trx_lock_structs > 0
               OR t.trx_started < NOW() - INTERVAL transaction_seconds SECOND
               OR (p.COMMAND = 'Query' AND p.TIME > statement_seconds));
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET finished = 1;
    -- A victim that ended by itself meanwhile is not an error.
    DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
    OPEN victims;
    sweep: LOOP
        FETCH victims INTO victim;
        IF finished THEN
            LEAVE sweep;
        END IF;
        KILL CONNECTION victim;
    END LOOP;
    CLOSE victims;
END //
DELIMITER ;
CREATE OR REPLACE EVENT payfn_reader_guard ON SCHEDULE EVERY 1 SECOND
    COMMENT 'payfn: the read-only user cannot hold locks or run unbounded'
    DO CALL payfn_reader_guard('{reader}', {statement_seconds}, {transaction_seconds});
