//! The `IntentService` gRPC trait: the request is validated into a [`Question`], answered
//! by [`analyze::analyze`], and the answer converted back. The service credential was
//! checked by the interceptor before this runs.

use std::sync::Arc;

use atelier_proto::intent::v1::intent_service_server::IntentService;
use atelier_proto::intent::v1::{AnalyzeIntentRequest, AnalyzeIntentResponse};
use tonic::{Request, Response, Status};

use crate::State;
use crate::analyze::{self, Question};

pub struct IntentApi {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl IntentService for IntentApi {
    async fn analyze_intent(
        &self,
        request: Request<AnalyzeIntentRequest>,
    ) -> Result<Response<AnalyzeIntentResponse>, Status> {
        let question = Question::try_from(request.into_inner())?;
        let answer = analyze::analyze(&self.state, question).await;
        Ok(Response::new(answer.into()))
    }
}
