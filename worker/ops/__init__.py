"""Running it: doctor, the supervisor behind `keyrotor run`, metrics, log format."""
