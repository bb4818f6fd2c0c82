"""The pgfleet router: a PostgreSQL wire-protocol endpoint in front of the coordinator and the workers."""
