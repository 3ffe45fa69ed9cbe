-- Items a player holds, and when the player was last seen.
CREATE TABLE inventory (
  player_id BIGINT UNSIGNED NOT NULL,
  item_id   INT UNSIGNED    NOT NULL,
  count     INT UNSIGNED    NOT NULL DEFAULT 1,
  PRIMARY KEY (player_id, item_id),
  CONSTRAINT inventory_player FOREIGN KEY (player_id) REFERENCES players (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

ALTER TABLE players ADD COLUMN last_login TIMESTAMP NULL DEFAULT NULL;
