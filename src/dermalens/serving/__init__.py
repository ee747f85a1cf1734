"""Serving: a web page and a JSON API around one trained model, under waitress.

`app.create_app` builds the Flask app (routes on a Blueprint in `routes`,
error answers in `errors`), `service.ModelService` holds the model with a
separate capacity for predictions and explanations (`capacity`),
`server.make_server` the waitress server, `launch.serve` runs it for `dermalens serve`. See
docs/serving.md. Research tool, not a diagnosis. Submodules import Flask and
torch on demand, so importing this package costs nothing.
"""
