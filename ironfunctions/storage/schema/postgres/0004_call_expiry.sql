-- CALL_RETENTION's sweep (calls/retention.py) finds finished calls by when they ended:
-- the expression of calls/ending.py's ENDED_AT, exactly, so the planner can use it.
CREATE INDEX calls_ended_at ON calls ((COALESCE(completed_at, created_at)));
