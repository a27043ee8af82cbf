"""National directory: imports of the open-data extractions, the search index, search, profile
cards and expert declarations, and publication (correspondence file, FHIR R4).

One module per concern (``imports``, ``index`` and ``documents``, ``local``, ``searching`` and its
``planner``, ``cards``, ``publication``); the functions other layers call are re-exported here.
"""

from monsisra.services.directory.cards import get_entry, get_my_profile, update_entry, update_my_profile
from monsisra.services.directory.common import ACTIVE_DAYS, KINDS, MODALITIES, TOTAL_CAP
from monsisra.services.directory.imports import check_header, import_files, sources
from monsisra.services.directory.index import rebuild_index
from monsisra.services.directory.local import set_local_place, sync_local
from monsisra.services.directory.publication import export_correspondance, fhir_bundle
from monsisra.services.directory.reports import FileReport, ImportReport
from monsisra.services.directory.searching import Where, resolve_where, search, search_for_token
from monsisra.services.directory.seed import seed_demo

__all__ = ["ACTIVE_DAYS", "KINDS", "MODALITIES", "TOTAL_CAP", "FileReport", "ImportReport", "Where", "check_header",
           "export_correspondance", "fhir_bundle", "get_entry", "get_my_profile", "import_files", "rebuild_index",
           "resolve_where", "search", "search_for_token", "seed_demo", "set_local_place", "sources", "sync_local",
           "update_entry", "update_my_profile"]
