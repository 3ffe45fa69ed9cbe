ALTER TABLE players DROP COLUMN last_login;
DROP TABLE IF EXISTS inventory;
