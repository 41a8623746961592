"""Sub-commands of the ``pumpctl`` command line."""
