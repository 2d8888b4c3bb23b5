"""Built-in analyzer plugins, registered by :data:`plugins.host.BUILTIN_PLUGINS`."""
