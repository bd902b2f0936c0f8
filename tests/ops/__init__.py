"""Operations tests with real daemons: Prometheus scraping the service (rules, dashboard), and the
service scaled out behind nginx and pooled through PgBouncer."""
