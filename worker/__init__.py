"""Background side of Settle: the broker, the transfer actor, its pool and the sweeper."""
