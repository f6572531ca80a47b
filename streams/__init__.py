"""Kafka: topics, the Faust app and its agents, the producer. The only Kafka consumer."""
