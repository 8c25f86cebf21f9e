"""The process runtime: settings, boot, embedded servers, signals and supervision."""
