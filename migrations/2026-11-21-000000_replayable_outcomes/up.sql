-- What this handler adds beside the JVM handler's tables: only new nullable columns,
-- a new table and an index, so the JVM handler could still run on the same database.

-- Two accounts with one IBAN would make "the account" ambiguous; the JVM handler only
-- checked before inserting, this makes concurrent account creations safe.
CREATE UNIQUE INDEX IF NOT EXISTS balance_iban_unique ON balance (iban);

-- The Kafka record that first carried a transfer command. A later record with the same
-- command id is a duplicate command (answered again, no events); the same record again
-- is a redelivery after a crash (answered again with its BalanceChanged events).
ALTER TABLE cmt ADD COLUMN IF NOT EXISTS source_partition int;
ALTER TABLE cmt ADD COLUMN IF NOT EXISTS source_offset bigint;

-- The BalanceChanged events a confirmed transfer caused, to publish them again exactly
-- as the first time after a crash. Rows live only until Kafka acknowledged the events. from_to and description are the command's own
-- strings, stored as bytes because PostgreSQL text cannot hold every Avro string (NUL).
CREATE TABLE IF NOT EXISTS cmt_balance_changed(
    cmt_uuid UUID NOT NULL REFERENCES cmt (uuid),
    position smallint NOT NULL,
    iban text NOT NULL,
    new_balance bigint NOT NULL,
    changed_by bigint NOT NULL,
    from_to bytea NOT NULL,
    description bytea NOT NULL,
    PRIMARY KEY (cmt_uuid, position));
