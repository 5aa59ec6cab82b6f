-- room for in-page updates
--
-- A save that leaves the indexed columns alone (a write within the touch interval) can then put
-- the new row version on the same page (a HOT update): no index entries to add, and pruning
-- reclaims the old version without a vacuum.
ALTER TABLE sessions SET (fillfactor = 75);
