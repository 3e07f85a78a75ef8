//! The `EnhancementService` gRPC trait: the request is validated into an [`Input`],
//! answered by [`enhance::enhance`], and the answer converted back. The service
//! credential was checked by the interceptor before this runs.

use std::sync::Arc;

use atelier_proto::enhancement::v1::enhancement_service_server::EnhancementService;
use atelier_proto::enhancement::v1::{EnhancePromptRequest, EnhancePromptResponse};
use tonic::{Request, Response, Status};

use crate::State;
use crate::enhance::{self, Input};

pub struct EnhancementApi {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl EnhancementService for EnhancementApi {
    async fn enhance_prompt(
        &self,
        request: Request<EnhancePromptRequest>,
    ) -> Result<Response<EnhancePromptResponse>, Status> {
        let input = Input::try_from(request.into_inner())?;
        let answer = enhance::enhance(&self.state, input).await;
        Ok(Response::new(answer.into()))
    }
}
