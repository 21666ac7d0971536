DROP TABLE IF EXISTS cmt_balance_changed;
ALTER TABLE cmt DROP COLUMN IF EXISTS source_offset;
ALTER TABLE cmt DROP COLUMN IF EXISTS source_partition;
DROP INDEX IF EXISTS balance_iban_unique;
