"""gunicorn config for the benchmark: no TLS session tickets, as securewsgi in mutual
mode and every other target of the benchmark (see NGINX_NO_TICKETS in targets.py)."""


def ssl_context(conf, default_ssl_context_factory):  # gunicorn's server hook (>= 21)
    context = default_ssl_context_factory()
    context.num_tickets = 0
    return context
