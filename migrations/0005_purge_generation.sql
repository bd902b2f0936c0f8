-- Which purge last moved each tenant's horizon: the transaction id of the
-- purge chunk (xid8). A cursor carries the delivery horizon (the snapshot's
-- xmin) of the read that made it; a purge whose id is below it had ended
-- before that read began, and what it deleted was already gone for that
-- reader. Only a horizon moved by a later purge can make a cursor 410, so a
-- reader that started after a purge is never told to start again by it.
-- Rows from before this column: '0', older than any cursor's stamp; a
-- cursor without a stamp (made before) is checked against every horizon.
-- depends: 0004_feed_order

ALTER TABLE purge_horizons ADD COLUMN generation xid8 NOT NULL DEFAULT '0';
