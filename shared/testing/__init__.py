"""What the test suite and the benchmarks share: scratch databases and RabbitMQ vhosts
(`scratch`), and a large synthetic ledger (`bulk`). The service never imports it."""
