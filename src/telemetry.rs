//! Logs and traces, set up the same way in every smsmesh program.
//!
//! Logs go to stderr (level from `RUST_LOG`). Traces are exported over
//! OTLP/gRPC when an endpoint is given (`--otlp-endpoint`) or one of the
//! standard variables `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` turns
//! them off. The OpenTelemetry SDK reads the other standard variables itself:
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the service name
//! defaults to the program's name), `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`, and the `OTEL_BSP_*` batch settings.
//!
//! Spans are exported in the background in batches; when no collector
//! listens, exports fail quietly and spans are dropped, so nothing waits on
//! the collector. Trace context crosses processes as W3C `traceparent`: in
//! gRPC metadata for client calls, and in the job stream for messages.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace exporter alive; dropping it sends what is still queued.
#[must_use = "traces stop being exported when this is dropped"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is still queued and stops exporting. Waits off the runtime's
    /// threads, so the export can use the runtime even when it has only one.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Flushes the queue; errors (no collector) are not worth a log line at exit.
            let _ = provider.shutdown();
        }
    }
}

/// Sets up logging on stderr at `default_level` unless `RUST_LOG` says
/// otherwise, and trace export when an OTLP endpoint is configured.
///
/// `service` is the default `service.name` (`OTEL_SERVICE_NAME` wins);
/// `otlp_endpoint`, from a command-line flag, wins over the environment.
/// Must be called inside a Tokio runtime when traces are exported.
pub fn init(service: &str, default_level: &str, otlp_endpoint: Option<&str>) -> Telemetry {
    init_instance(service, None, default_level, otlp_endpoint)
}

/// [`init`], naming this instance of the service (`service.instance.id`),
/// e.g. a node's name.
pub fn init_instance(
    service: &str,
    instance: Option<&str>,
    default_level: &str,
    otlp_endpoint: Option<&str>,
) -> Telemetry {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    // One JSON object a line for log pipelines (ELK, Loki): SMSMESH_LOG_FORMAT=json.
    let json = std::env::var("SMSMESH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    };

    let (provider, error) = match exporter_wanted(otlp_endpoint) {
        false => (None, None),
        true => match build_provider(service, instance, otlp_endpoint) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
    };
    let otel = provider.as_ref().map(|p| {
        // Only smsmesh's own spans: not those of the gRPC stack (nor of the exporter itself).
        let ours = Targets::new()
            .with_target("smsmesh", tracing::Level::INFO)
            .with_target("smscoord", tracing::Level::INFO)
            .with_target("smsnode", tracing::Level::INFO)
            .with_target("smsmon", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.to_string()))
            .with_filter(ours)
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry().with(fmt).with(otel).init();
    if let Some(e) = error {
        tracing::warn!(error = %e, "traces are not exported: cannot set up the OTLP exporter");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP/gRPC");
    }
    Telemetry { provider }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn exporter_wanted(otlp_endpoint: Option<&str>) -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && (otlp_endpoint.is_some_and(|e| !e.is_empty())
            || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn build_provider(
    service: &str,
    instance: Option<&str>,
    otlp_endpoint: Option<&str>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = otlp_endpoint.filter(|e| !e.is_empty()) {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build()?;
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    let named_by_env = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named_by_env {
        resource = resource.with_service_name(service.to_string());
    }
    if let Some(instance) = instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_string(),
        ));
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}

/// The W3C `traceparent` of `span`, if it is recorded and sampled (so that
/// children in other processes are worth creating).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() || !sc.is_sampled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of `parent` in the trace only, by `parent`'s span
/// context (no reference to it is kept). For a span that outlives its
/// parent: create it with `parent: None` and link it here, so the parent
/// still ends (and is exported) when it closes.
pub fn set_trace_parent(span: &tracing::Span, parent: &tracing::Span) {
    if let Some(tp) = traceparent(parent) {
        set_remote_parent(span, &tp);
    }
}

/// Makes `span` a child of the remote span named by a W3C `traceparent`
/// (ignored when it does not parse).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of the caller's span, if the gRPC request carries trace context.
pub fn set_parent_from_metadata(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataReader(metadata)));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Puts `span`'s trace context into outgoing gRPC metadata.
pub fn inject_into_metadata(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataWriter(metadata))
    });
}

struct MetadataReader<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataWriter<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}
