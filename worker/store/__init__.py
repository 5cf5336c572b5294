"""Tables, queries and migrations. No rules live here."""
