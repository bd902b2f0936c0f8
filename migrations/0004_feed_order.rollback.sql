-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS events_feed;
