"""PostgreSQL schema migrations, numbered ``NNNN_name.sql``, applied in order once each."""
