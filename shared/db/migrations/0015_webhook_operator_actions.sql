-- Operators retry failed webhook deliveries (the dashboard's webhooks pages, `settle webhooks
-- retry`), and the operator action record keeps that beside the transfers' retries and
-- cancels: action `retry_webhook`, the endpoint and the deliveries set pending again (no
-- transfers: `transfer_ids` is empty for it).
ALTER TABLE operator_actions
    DROP CONSTRAINT operator_actions_action_check,
    ADD CONSTRAINT operator_actions_action_check
        CHECK (action IN ('retry', 'cancel', 'retry_webhook')),
    ADD COLUMN webhook_endpoint_id bigint REFERENCES webhook_endpoints (id),
    ADD COLUMN webhook_delivery_ids bigint[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT operator_actions_webhook_subject
        CHECK ((action = 'retry_webhook') = (webhook_endpoint_id IS NOT NULL));

-- The deliveries not done with (pending, or failed for good), by endpoint: what the operators'
-- list of endpoints counts, failing ones first, without reading the delivered ones.
CREATE INDEX webhook_deliveries_unfinished ON webhook_deliveries (endpoint_id, id)
    WHERE status IN ('pending', 'failed');
