"""Read models and their stores: the ClickHouse event log and the stage projection."""
