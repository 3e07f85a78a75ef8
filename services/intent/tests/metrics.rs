//! The answer counters reach Prometheus: `/metrics` on ATELIER_METRICS_ADDR counts each
//! answer under the path that gave it, and the server stack records the call.

use atelier_proto::intent::v1 as intent;
use atelier_proto::intent::v1::intent_service_client::IntentServiceClient;
use atelier_runtime::internal_call::{SERVICE_TOKEN_HEADER, ServiceToken};
use atelier_testkit::scrape_metrics as scrape;

#[tokio::test]
async fn answers_are_counted_by_source_on_the_metrics_endpoint() {
    let metrics_addr = atelier_testkit::free_local_addr();
    let config = atelier_intent::Config {
        service_token: ServiceToken::new("metrics-test"),
        metrics_addr: Some(metrics_addr),
        ..atelier_intent::Config::default()
    };
    let server = atelier_testkit::spawn_server(|listener, shutdown| {
        atelier_intent::run(config, listener, shutdown)
    })
    .await
    .expect("intent");
    let channel = tonic::transport::Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = IntentServiceClient::new(channel);
    let mut request = tonic::Request::new(intent::AnalyzeIntentRequest {
        prompt: "make it night-time".into(),
        previous_prompt: "a red fox in the snow".into(),
        has_previous_image: true,
    });
    request
        .metadata_mut()
        .insert(SERVICE_TOKEN_HEADER, "metrics-test".parse().expect("ascii"));
    let answer = client
        .analyze_intent(request)
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(answer.source(), intent::IntentSource::Heuristic);

    let page = scrape(metrics_addr).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("atelier_intent_answers_total{source=\"heuristic\"} 1"),
        "{page}"
    );
    // The server stack's own series: the call, by method and status.
    assert!(
        page.contains("atelier_rpc_server_duration_seconds_count{method=\"/atelier.intent.v1.IntentService/AnalyzeIntent\",code=\"OK\"} 1"),
        "{page}"
    );
}
