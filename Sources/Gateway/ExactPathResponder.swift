import HTTPTypes
import Hummingbird

/// The router, with a few paths found by one string comparison before it walks its trie.
///
/// Hummingbird's router splits every request's path into components and matches each against the trie's
/// nodes as `Substring`s, Character by Character: about 11,000 instructions a request for
/// `/v1/chat/completions` among the node's twenty routes (callgrind, `scripts/bench-callgrind`). Nearly every
/// request a node serves takes one of two paths, so those are compared whole first. Each such route runs
/// through the same middleware chain the router would have built for it (`router.middlewares`). Any other
/// path, these paths with a query string or another method, and the 404 and 405 answers, are the router's.
public struct ExactPathResponder<Context: RequestContext>: HTTPResponder {
    struct Route: Sendable {
        let method: HTTPRequest.Method
        let path: String
        let responder: any HTTPResponder<Context>
    }

    private let routes: [Route]
    private let router: RouterResponder<Context>

    /// `exact`: method, path and handler of each route to compare first. The router must already have
    /// all its middleware (only what was added before this call wraps these routes) and the same routes.
    public init(
        router: Router<Context>,
        exact: [(method: HTTPRequest.Method, path: String, handler: @Sendable (Request, Context) async throws -> Response)]
    ) {
        self.routes = exact.map { route in
            Route(method: route.method, path: route.path,
                  responder: router.middlewares.constructResponder(finalResponder: CallbackResponder(callback: route.handler)))
        }
        self.router = router.buildResponder()
    }

    public func respond(to request: Request, context: Context) async throws -> Response {
        if let path = request.head.path {
            for route in routes where route.method == request.method && route.path == path {
                context.coreContext.endpointPath.value = route.path
                do {
                    return try await route.responder.respond(to: request, context: context)
                } catch let error as any HTTPResponseError {
                    // What the router does with an error that knows its own answer.
                    return try error.response(from: request, context: context)
                }
            }
        }
        return try await router.respond(to: request, context: context)
    }
}
