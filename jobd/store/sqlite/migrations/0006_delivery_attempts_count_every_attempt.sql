-- A delivery's `attempts` counts every attempt made to send it, as its rows in
-- delivery_attempts do, also after `jobd dlq retry`. The retry budget that a DLQ
-- retry renews is counted from `budget_base`: the attempts made before that retry
-- (a claim hands the dispatcher `attempts - budget_base`).
--
-- Until now a DLQ retry reset `attempts` to 0, so after one the delivery said 1
-- while its history listed every attempt. Rows migrated here get their history's
-- count, and the difference as the base of their current budget.
ALTER TABLE deliveries ADD COLUMN budget_base INTEGER NOT NULL DEFAULT 0;

UPDATE deliveries SET budget_base = h.n - deliveries.attempts, attempts = h.n
FROM (SELECT delivery_id, count(*) AS n FROM delivery_attempts GROUP BY delivery_id) AS h
WHERE h.delivery_id = deliveries.id AND h.n > deliveries.attempts;
