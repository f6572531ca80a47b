"""Personal data at rest: sealed per customer, erasable by destroying one key.

``cipher`` (AES-256-GCM, keyed hashes), ``fields`` (which fields are personal),
``keystore`` (customers' data keys, wrapped by the master key; the suppression
list), ``vault`` (sealing and opening events' personal fields).
"""
