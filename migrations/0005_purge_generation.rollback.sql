ALTER TABLE purge_horizons DROP COLUMN generation;
