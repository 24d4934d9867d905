"""Bus: delivers committed events to the nodes holding the recipients' connections."""
