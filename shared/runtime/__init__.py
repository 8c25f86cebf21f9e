"""The process runtime: boot, logging, metrics, embedded servers, signals and supervision
(settings live below it, in `shared.config`)."""
