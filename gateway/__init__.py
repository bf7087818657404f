"""The Litestar gateway: ingress, auth, dispatch, streaming, admin API and the `escalade` CLI."""
