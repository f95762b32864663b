"""Tables, figures and the demo summary."""
