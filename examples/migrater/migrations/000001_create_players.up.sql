-- One row per player account of the zone.
CREATE TABLE players (
  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  account    VARCHAR(64)     NOT NULL,
  name       VARCHAR(32)     NOT NULL,
  level      INT UNSIGNED    NOT NULL DEFAULT 1,
  created_at TIMESTAMP       NOT NULL DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (id),
  UNIQUE KEY players_account (account)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
