"""jobd's store on SQLite: one file in WAL mode, written by one group-commit writer
thread (``writer``), checkpointed by another (``checkpointer``); its schema migrations
(``migrations/``) and named statements (``queries.sql``)."""
