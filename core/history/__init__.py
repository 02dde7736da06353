"""History reads shared by the services (issue 14: "every SQL read lives in core/"): the SQL
(:mod:`core.history.sql`), the book at a past moment (:mod:`core.history.book`), replay pages
(:mod:`core.history.replay`) and the Parquet archive read as one more history source
(:mod:`core.history.archive`). The storage service writes these tables; the REST gateway and the
replay server only read them, through here."""
