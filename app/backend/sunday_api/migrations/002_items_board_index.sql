CREATE INDEX IF NOT EXISTS items_board_id_idx ON items (board_id, id);
