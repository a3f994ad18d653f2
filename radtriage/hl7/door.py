"""The HL7 v2 door, assembled from settings: MLLP listener → `OrderReceiver` → core; core → outbox → RIS."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine

from ..app.config import Settings
from ..app.core.domain import JobEvent, JobState
from ..app.core.errors import ErrorCode
from ..app.core.ports import EventListener
from ..app.core.service import TriageService
from .handlers import OrderReceiver, ReceiverSettings, ReportHandler
from .mapping import ReaderOptions
from .mllp import MLLPClient, MLLPServer, PeerAllowList, client_ssl_context, server_ssl_context
from .outbound import Endpoints, OutboundOptions, OutboundStyle
from .outbox import HL7ResultPublisher, OutboxSender, OutboxStore, PublishOptions
from .priority_map import load_priority_map
from .store import HL7Store

log = logging.getLogger(__name__)


class ServiceComponents(Protocol):
    """What the door needs from the composition root (`radtriage.app.factory.Components` has it). A
    protocol, so that this package does not import the factory, which imports the other doors."""

    @property
    def settings(self) -> Settings: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def service(self) -> TriageService: ...


def _hd(text: str) -> tuple[str, ...]:
    """``APP`` or ``APP^1.2.3^ISO`` (an HD as written in MSH-3) → components."""
    return tuple(text.split("^")) if text else ()


def _csv(text: str) -> frozenset[str]:
    return frozenset(item.strip() for item in text.split(",") if item.strip())


@dataclass
class HL7Door:
    receiver: OrderReceiver
    outbox: OutboxStore
    listener: MLLPServer | None = None
    publisher: HL7ResultPublisher | None = None
    sender: OutboxSender | None = None

    @property
    def port(self) -> int | None:
        """The port the listener is bound to (after `start()`), or None when it is off."""
        return self.listener.port if self.listener else None

    def start(self) -> None:
        self.receiver.accepting = True
        if self.sender is not None:
            self.sender.start()
        if self.listener is not None:
            self.listener.start()

    def stop(self) -> None:
        """Answer AR to whatever still arrives, close the listener, stop sending (pending messages stay)."""
        self.receiver.accepting = False
        if self.listener is not None:
            self.listener.stop()
        if self.sender is not None:
            self.sender.stop()


def build_hl7_door(
    components: ServiceComponents,
    settings: Settings | None = None,
    *,
    listen_port: int | None = None,
    report_handler: ReportHandler | None = None,
) -> HL7Door:
    """The HL7 door on top of the service's components.

    The listener is created when ``settings.mllp_port`` is set, or when `listen_port` is given (0 binds any
    free port: tests). ORU^R01 final reports go to `report_handler`, by default to the one the components'
    ``monitoring`` offers (``hl7_report_handler()``, radtriage.monitoring); without one they are answered AR.
    The outbox publisher is registered with the service and the sender created when a RIS
    is configured (``ris_host`` and ``ris_port``). Nothing starts until `HL7Door.start()`.
    """
    settings = settings or components.settings
    service = components.service
    priority_map = load_priority_map(settings.priority_map or None)
    store = HL7Store(components.engine)
    outbox = OutboxStore(components.engine)
    application = _hd(settings.hl7_application) or ("RADTRIAGE",)
    facility = _hd(settings.hl7_facility)
    receiver = OrderReceiver(
        service,
        store,
        ReceiverSettings(
            application=application,
            facility=facility,
            allowed_senders=_csv(settings.hl7_allowed_senders),
            processing_ids=frozenset(p.upper() for p in _csv(settings.hl7_processing_ids)),
            reader=ReaderOptions(study_uid_field=settings.hl7_study_uid_field, priority_map=priority_map),
        ),
    )
    if report_handler is None:
        monitoring = getattr(components, "monitoring", None)
        offer = getattr(monitoring, "hl7_report_handler", None)
        report_handler = offer() if callable(offer) else None
    receiver.reports = report_handler
    door = HL7Door(receiver=receiver, outbox=outbox)

    port = settings.mllp_port if listen_port is None else listen_port
    if listen_port is not None or settings.mllp_port > 0:
        tls = (
            server_ssl_context(settings.mllp_tls_cert, settings.mllp_tls_key, settings.mllp_tls_client_ca or None)
            if settings.mllp_tls_cert
            else None
        )
        door.listener = MLLPServer(
            receiver,
            settings.mllp_host,
            port,
            max_message_bytes=settings.mllp_max_message_bytes,
            idle_timeout=settings.mllp_idle_timeout,
            read_timeout=settings.mllp_read_timeout,
            ssl_context=tls,
            allowed_peers=PeerAllowList.parse(settings.mllp_allowed_peers),
            max_connections=settings.mllp_max_connections,
            first_byte_timeout=settings.mllp_first_byte_timeout,
            max_connections_per_peer=settings.mllp_max_connections_per_peer,
            reserved_peers=PeerAllowList.parse(settings.mllp_reserved_peers),
            reserved_connections=settings.mllp_reserved_connections,
        )

    if settings.ris_host and settings.ris_port > 0:
        client_tls = (
            client_ssl_context(settings.ris_tls_ca, settings.ris_tls_cert, settings.ris_tls_key)
            if settings.ris_tls_ca or settings.ris_tls_cert
            else None
        )
        client = MLLPClient(settings.ris_host, settings.ris_port, timeout=settings.ris_timeout, ssl_context=client_tls)
        door.sender = OutboxSender(
            outbox,
            client,
            clock=service.clock,
            retry_base=settings.hl7_retry_base,
            retry_max=settings.hl7_retry_max,
        )
        door.publisher = HL7ResultPublisher(
            outbox,
            store,
            PublishOptions(
                outbound=OutboundOptions(
                    style=OutboundStyle(settings.hl7_outbound_style.lower()),
                    endpoints=Endpoints(
                        application, facility, _hd(settings.ris_application), _hd(settings.ris_facility)
                    ),
                    priority_map=priority_map,
                ),
                send_results=settings.hl7_send_oru,
            ),
            clock=service.clock,
            on_stored=door.sender.wake,
        )
        # The pipeline's publishing stage calls every registered publisher (the core's ResultPublisher port).
        if not any(isinstance(p, HL7ResultPublisher) for p in service.publishers):
            service.publishers.append(door.publisher)
            # A study that cannot be analysed fails its job without a result: the failure event tells the RIS.
            service.listeners.append(_not_analysed_listener(service, door.publisher))
    return door


def _not_analysed_listener(service: TriageService, publisher: HL7ResultPublisher) -> EventListener:
    """On a job's final failure (not retryable: not a chest, not a radiograph, unreadable...), an update to the
    RIS that says so, with the coded reason, at the order's own priority."""

    def on_event(event: JobEvent) -> None:
        if event.to_state is not JobState.FAILED or event.data.get("retryable") == "true":
            return
        job = service.store.get_job(event.job_id)
        order = service.store.get_order(job.order_id) if job is not None else None
        if order is None:
            return
        code = event.reason_code or ErrorCode.INTERNAL.value
        try:
            display = ErrorCode(code).display
        except ValueError:
            display = code
        publisher.publish_not_analysed(order, event.job_id, code, display)

    return on_event
