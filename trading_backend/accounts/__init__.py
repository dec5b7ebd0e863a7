"""Users, authentication and the credential vault."""
