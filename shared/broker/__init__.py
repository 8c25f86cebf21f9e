"""Everything Settle knows about its message broker, in one package.

- `messages`: the queue transfers travel on, the settle actors' names, and the transfer-id
  codec (ids into messages, messages back into ids);
- `base`: `SettleBroker`, the interface every process uses (send batches, queue depths,
  dead letters, ping, the workers' heartbeat), and the one error it raises,
  `shared.errors.BrokerUnavailable`;
- `redis_broker`, `rabbitmq_broker`: the interface on dramatiq's Redis and RabbitMQ brokers,
  with what each needs of dramatiq's internals and of its client;
- `factory`: the broker a URL names (`shared.config.brokers`), built, and the boot check;
- `sending`: web's grouping sender.

The worker's actors and its dramatiq middleware live in `worker/`; they are declared on, and
carried by, the broker built here.
"""
