/**
 * Reads a paged list (ListPager on the server) to its end: `read` is called with each
 * next_page_token until one comes back empty. Every page of one list is of the same state, so
 * the pages together are the whole list exactly once.
 */
export async function readAllPages<R extends { nextPageToken: string }>(read: (pageToken: string) => Promise<R>): Promise<R[]> {
  const pages: R[] = [];
  const seen = new Set<string>();
  let token = "";
  do {
    const page = await read(token);
    pages.push(page);
    token = page.nextPageToken;
    // A server that hands a token back twice would loop for ever.
    if (seen.has(token)) throw new Error(`the server repeated next_page_token ${JSON.stringify(token.slice(0, 40))}`);
    seen.add(token);
  } while (token !== "");
  return pages;
}
