"""Ingest: STAC search and COG reads turned into chip shards (Parquet + WebDataset).

``search`` finds scenes, ``catalogs`` maps each catalog's assets onto canonical bands, ``chips``
reads pixels, ``landcover`` adds land-cover fractions, ``shards`` writes and reads the shards and
``pipeline`` runs it all on Ray Data.
"""
