/**
 * The message of anything a `catch` caught, for logs and for the reasons we put in answers.
 * `catch (e)` gives `unknown`: most values are Errors, but a library can throw a string or a
 * plain object, and `(e as Error).message` then reads `undefined` into a user's message. An
 * object with a string `message` (an Error from another realm, a grpc-js ServiceError, a
 * docker-modem error) gives that message, exactly as the cast did; anything else its String().
 */
export function errorMessage(e: unknown): string {
  if (typeof e === "object" && e !== null && "message" in e && typeof e.message === "string") return e.message;
  try {
    return String(e);
  } catch {
    // An object without a prototype (Object.create(null)) has no toString.
    return Object.prototype.toString.call(e);
  }
}
