"""Storage, the lowest layer (it imports nothing of the engine): where the data folder is (paths), the database
(db, tables), the queue's state machine (queue), the catalogue of models and data (catalogue), results rows
(results), what pages show (views) and the content-addressed files (blobs)."""
