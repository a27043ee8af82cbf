"""Video (issue 17): calls between professionals in a conversation (or any registered context,
such as tele-expertise: :func:`start_call` with its own context), TURN credentials, WebRTC
signalling relayed between a call's members, and teleconsultations with a patient.
"""

import monsisra.services.video.contexts  # registers the conversation and teleconsultation contexts
import monsisra.services.video.teleconsult as teleconsult
import monsisra.services.video.teleexpertise  # noqa: F401  (registers the tele-expertise context)
from monsisra.services.video.calls import (
    MAX_MEMBERS,
    Sender,
    as_message,
    decline,
    end,
    get_call,
    join,
    leave,
    patient_bus_id,
    register_context,
    signal,
    start_call,
)

__all__ = ["MAX_MEMBERS", "Sender", "as_message", "decline", "end", "get_call", "join", "leave", "patient_bus_id",
           "register_context", "signal", "start_call", "teleconsult"]
