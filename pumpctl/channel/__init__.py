"""One pump channel, split by concept; ``pumpctl.controller.Controller`` wires the parts."""
