-- A delivery worker's claim on one subscription's queue while it sends
-- (docs/subscriptions.md): taken in one short statement and given back in
-- the short transaction that records the attempts, so no connection or row
-- lock is held during the POSTs. A worker that dies leaves its claim to
-- expire; then another worker takes the queue, from the same head.
CREATE TABLE subscription_lease (
    subscription_id uuid PRIMARY KEY,
    -- Which claim this is: only its holder gives it back.
    holder uuid NOT NULL,
    until timestamptz NOT NULL
);
