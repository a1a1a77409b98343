//! `fanout health ADDR`: one `grpc.health.v1` check, for Docker's
//! HEALTHCHECK and Kubernetes exec probes (the image has no grpcurl).
//! Exits 0 when the server says SERVING, 1 otherwise (NOT_SERVING, an
//! unknown service, no answer in time), with the reason on stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The server: `host:port` or `http://host:port`.
    pub addr: String,
    /// The service to ask about (`fanout.v1.Leaf`, `fanout.search.v1.Search`,
    /// ...); empty: the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long connecting and the check may take together, in milliseconds.
    #[arg(long, default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub tls: super::ClientTlsArgs,
}

/// A checked `fanout health`.
pub struct HealthPlan {
    url: String,
    endpoint: Endpoint,
    service: String,
    timeout: Duration,
}

impl HealthArgs {
    pub fn validate(self) -> anyhow::Result<HealthPlan> {
        let url = super::grpc_url("ADDR", &self.addr)?;
        Ok(HealthPlan {
            endpoint: self.tls.endpoint(&url)?,
            url,
            service: self.service,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

pub async fn run(plan: HealthPlan) -> anyhow::Result<ExitCode> {
    let HealthPlan {
        url,
        endpoint,
        service,
        timeout,
    } = plan;
    let shown = if service.is_empty() {
        url.clone()
    } else {
        format!("{url} ({service})")
    };
    match tokio::time::timeout(timeout, check(endpoint, &service, timeout)).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("{shown}: SERVING");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(status)) => {
            eprintln!("{shown}: {}", status.as_str_name());
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(error)) => {
            eprintln!("{shown}: {error:#}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("{shown}: no answer within {timeout:?}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn check(
    endpoint: Endpoint,
    service: &str,
    timeout: Duration,
) -> anyhow::Result<ServingStatus> {
    let endpoint = endpoint.connect_timeout(timeout);
    let channel = fanout_runtime::client::connect(&endpoint)
        .await
        .context("cannot connect")?;
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let answer = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{}: {}",
                fanout_proto::status::code_name(status.code()),
                status.message()
            )
        })?;
    Ok(answer.into_inner().status())
}
