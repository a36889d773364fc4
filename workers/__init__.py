"""Ready-to-run request handlers built on prefork's public API.

    prefork serve workers.echo:EchoHandler      # the default of `prefork serve`
    prefork serve workers.hello:HelloHandler    # minimal HTTP/1.1 keep-alive hello
"""
